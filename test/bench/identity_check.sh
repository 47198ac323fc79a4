#!/usr/bin/env bash
# How long after start-up until a database's identity is verified, and does
# it depend on the size of the change log?  For a change log of
# BENCH_SMALL and BENCH_ROWS stamped rows, in one run: a clean restart (no
# rotation), and a copy restored from CALL replstamp.backup() (rotation).
# Prints, from the server log, the time from "database system is ready to
# accept connections" to "identity of database ... verified", and the time
# the check itself took.  Target: under 1 second, independent of the size.
#
#   test/bench/identity_check.sh
#   BENCH_ROWS=100000 test/bench/identity_check.sh
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/identity_check.sh" "$@"

SMALL=${BENCH_SMALL:-1000}
ROWS=${BENCH_ROWS:-1000000}
bench_cluster "log_line_prefix = '%m [%p] '" "max_wal_size = 4GB"
psql -qX -c "CREATE EXTENSION replstamp" \
	-c "CREATE TABLE t (id int PRIMARY KEY, v text)" -c "SELECT replstamp.track('t')"

# Milliseconds since midnight of a log line's timestamp.
ms_of() { awk '{ split($2, t, ":"); printf "%.0f\n", (t[1] * 3600 + t[2] * 60 + t[3]) * 1000 }'; }

# Wait for the verification after a start logged from line $2 of log $1;
# print "ready-to-verified-ms check-ms".
measure() {
	local log="$1" from="$2" ready verified check i
	for i in $(seq 300); do
		tail -n +"$from" "$log" | grep -q 'identity of database "bench" verified' && break
		sleep 0.1
	done
	ready=$(tail -n +"$from" "$log" | grep 'ready to accept connections' | tail -1 | ms_of)
	verified=$(tail -n +"$from" "$log" | grep 'identity of database "bench" verified' | tail -1)
	check=$(echo "$verified" | sed 's/.* verified in \([0-9.]*\) ms.*/\1/')
	echo "$(( $(echo "$verified" | ms_of) - ready )) $check"
}

results=""
copy=0
for rows in "$SMALL" "$ROWS"; do
	have=$(psql -qXAt -c "SELECT count(*) FROM replstamp.changes")
	psql -qX -c "INSERT INTO t SELECT g, 'row ' || g FROM generate_series($have + 1, $rows) g" \
		-c "CHECKPOINT"
	n=$(psql -qXAt -c "SELECT count(*) FROM replstamp.changes")

	# Clean restart: no rotation.
	from=$(($(wc -l <"$WORK/log") + 1))
	pg_ctl -D "$WORK/data" -l "$WORK/log" -w restart -m fast >/dev/null
	read -r r_total r_check <<<"$(measure "$WORK/log" "$from")"

	# A copy restored from replstamp.backup(): rotation.
	copy=$((copy + 1))
	psql -qX -c "CALL replstamp.backup('$WORK/copy$copy')" 2>/dev/null
	sed -i "s/^port = .*/port = $((PORT + copy))/" "$WORK/copy$copy/postgresql.conf"
	pg_ctl -D "$WORK/copy$copy" -l "$WORK/copy$copy.log" -w start >/dev/null
	read -r c_total c_check <<<"$(measure "$WORK/copy$copy.log" 1)"
	grep -q 'retired replica ID' "$WORK/copy$copy.log" || { echo "the copy did not rotate" >&2; exit 1; }
	pg_ctl -D "$WORK/copy$copy" -m fast stop >/dev/null

	results="$results$(printf '%-14s %22s %10s %22s %10s' "$n" "$r_total" "$r_check" "$c_total" "$c_check")
"
done

printf '\ntime from "ready to accept connections" to "identity verified", in ms\n'
printf '%-14s %22s %10s %22s %10s\n' "change log" "restart: ready->verif." "check" "restore: ready->verif." "check"
printf '%s' "$results"
printf 'target: under 1000 ms, independent of the change log size\n'

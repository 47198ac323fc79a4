#!/usr/bin/env bash
# What a row ID (replstamp.track(t, row_id => true), for a table without a
# primary key or usable unique index) costs: an INSERT of BENCH_ROWS
# (200,000) rows in one statement into a table (k bigint, v text) with no
# index, best of BENCH_RUNS (5), interleaved: untracked without a row ID,
# untracked with one (tracked with row_id, then untracked: the column, its
# sequence and its index stay), and tracked with one; and the bytes per
# row of table and indexes.
#
#   test/bench/row_id_cost.sh
#   BENCH_ROWS=1000000 BENCH_RUNS=9 test/bench/row_id_cost.sh
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/row_id_cost.sh" "$@"

ROWS=${BENCH_ROWS:-200000}
RUNS=${BENCH_RUNS:-5}
bench_cluster "synchronous_commit = off"
psql -qX -c "CREATE EXTENSION replstamp" \
	-c "CREATE TABLE plain (k bigint, v text)" \
	-c "CREATE TABLE with_id (k bigint, v text)" \
	-c "SELECT replstamp.track('with_id', row_id => true)" \
	-c "SELECT replstamp.untrack('with_id')" \
	-c "CREATE TABLE tracked_id (k bigint, v text)" \
	-c "SELECT replstamp.track('tracked_id', row_id => true)" >/dev/null 2>&1

# Milliseconds of one INSERT of $ROWS rows into table $1 (emptied first).
once() {
	psql -qX -c "TRUNCATE $1" -c "CHECKPOINT" >/dev/null
	psql -qXAt -c '\timing on' -c "INSERT INTO $1 (k, v) SELECT g, 'row ' || g FROM generate_series(1, $ROWS) g" |
		sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}

declare -A best
for i in $(seq "$RUNS"); do
	for t in plain with_id tracked_id; do
		ms=$(once "$t")
		best[$t]=$(printf '%s\n%s\n' "$ms" "${best[$t]:-}" | grep . | sort -n | head -1)
	done
done
printf '\nINSERT of %s rows in one statement, best of %s\n' "$ROWS" "$RUNS"
printf '%-40s %10s %14s %16s\n' table ms "µs per row" "bytes per row"
for t in plain with_id tracked_id; do
	bytes=$(psql -qXAt -c "VACUUM $t" -c "SELECT (pg_table_size('$t') + pg_indexes_size('$t')) / $ROWS")
	case $t in
		plain) what="no row ID, untracked" ;;
		with_id) what="row ID, untracked" ;;
		tracked_id) what="row ID, tracked (stamped)" ;;
	esac
	printf '%-40s %10.0f %14.2f %16s\n' "$what" "${best[$t]}" "$(echo "${best[$t]} * 1000 / $ROWS" | bc -l)" "$bytes"
done

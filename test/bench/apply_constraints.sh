#!/usr/bin/env bash
# What do constraints cost the apply?  Two clusters, a (origin) and b (the
# puller), the same four tracked tables:
#
#   plain   (id int PRIMARY KEY, parent_id int, v int)       no constraint
#   child   (id int PRIMARY KEY, parent_id int REFERENCES parent, v int)
#   uniq    (id int PRIMARY KEY, email text UNIQUE, v int)    a second unique key
#   parent  (id int PRIMARY KEY, v int)                      1000 rows, pulled first
#
# Each round, for each of plain, child and uniq: a inserts BENCH_ROWS rows
# (child rows reference one of the 1000 parents), b pulls them with ONE
# SELECT replstamp.sync('a'), timed; then a updates v of those rows (the
# keys unchanged), b pulls again, timed.  Prints the median changes/s per
# table and operation over BENCH_ROUNDS rounds.  Nothing conflicts: this is
# the cost of the checks themselves.  To compare two versions, run the
# script from each tree (it builds the tree it is in).
#
#   test/bench/apply_constraints.sh                 (50,000 rows, 3 rounds)
#   BENCH_ROWS=20000 BENCH_ROUNDS=5 test/bench/apply_constraints.sh
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/apply_constraints.sh" "$@"

ROWS=${BENCH_ROWS:-50000}
ROUNDS=${BENCH_ROUNDS:-3}
for v in $ROWS $ROUNDS; do
	case "$v" in ''|*[!0-9]*|0) say "apply_constraints.sh: not a positive number: \"$v\""; exit 2 ;; esac
done

CONF=("synchronous_commit = off" "shared_buffers = 256MB" "max_wal_size = 4GB"
	"checkpoint_timeout = 30min" "replstamp.sync_interval = 0" "replstamp.prune_interval = 0")
bench_cluster "${CONF[@]}"
PA=$PORT
PB=$((PA + 1))
bench_node b "$PB" "${CONF[@]}"

SCHEMA="CREATE EXTENSION replstamp;
CREATE TABLE plain (id int PRIMARY KEY, parent_id int, v int);
CREATE TABLE parent (id int PRIMARY KEY, v int);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, v int);
CREATE TABLE uniq (id int PRIMARY KEY, email text UNIQUE, v int);
SELECT replstamp.track(t::regclass) FROM unnest(ARRAY['plain', 'parent', 'child', 'uniq']) t;"
psql -qX -p "$PA" -c "$SCHEMA" >/dev/null
psql -qX -p "$PB" -c "$SCHEMA" >/dev/null
psql -qX -p "$PB" -c "SELECT replstamp.add_peer('a', 'host=$WORK port=$PA dbname=bench')" >/dev/null
psql -qX -p "$PA" -c "INSERT INTO parent SELECT g, 0 FROM generate_series(1, 1000) g"
psql -qX -p "$PB" -Atc "SELECT replstamp.sync('a')" >/dev/null

# Seconds one sync of b from a takes; checks it applied $1 changes.
timed_sync() {
	local want="$1" t0 t1 got
	t0=$(date +%s.%N)
	got=$(psql -qX -p "$PB" -Atc "SELECT replstamp.sync('a')")
	t1=$(date +%s.%N)
	[ "$got" = "$want" ] || { say "sync applied $got changes, expected $want"; exit 1; }
	echo "$t1 - $t0" | bc -l
}

declare -A RATES
for r in $(seq 1 "$ROUNDS"); do
	base=$(( (r - 1) * ROWS ))
	for t in plain child uniq; do
		case $t in
			uniq) ins="INSERT INTO uniq SELECT g, 'e' || g || '@x', 0 FROM generate_series($base + 1, $base + $ROWS) g" ;;
			*) ins="INSERT INTO $t SELECT g, g % 1000 + 1, 0 FROM generate_series($base + 1, $base + $ROWS) g" ;;
		esac
		psql -qX -p "$PA" -c "$ins"
		s=$(timed_sync "$ROWS")
		RATES[$t-insert]+="$(echo "$ROWS / $s" | bc -l) "
		psql -qX -p "$PA" -c "UPDATE $t SET v = v + 1 WHERE id > $base AND id <= $base + $ROWS"
		s=$(timed_sync "$ROWS")
		RATES[$t-update]+="$(echo "$ROWS / $s" | bc -l) "
	done
	say "round $r of $ROUNDS done"
done

# Both nodes hold the same rows.
for t in plain child uniq; do
	q="SELECT count(*) || ':' || md5(string_agg(x::text, ',' ORDER BY id)) FROM $t x"
	[ "$(psql -qX -p "$PA" -Atc "$q")" = "$(psql -qX -p "$PB" -Atc "$q")" ] ||
		{ say "table $t differs between a and b"; exit 1; }
done

printf '%-8s %-7s %12s   (median of %d rounds of %d rows; all rounds: changes/s)\n' table op 'changes/s' "$ROUNDS" "$ROWS"
for t in plain child uniq; do
	for op in insert update; do
		vals=${RATES[$t-$op]}
		med=$(printf '%s\n' $vals | median)
		printf '%-8s %-7s %12.0f   %s\n' "$t" "$op" "$med" "$(printf '%.0f ' $vals)"
	done
done

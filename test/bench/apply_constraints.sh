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
# the cost of the checks themselves.
#
# With APPLY_BASELINE naming another source tree (a checkout of an older
# commit), that tree is built too and runs on a second pair of clusters;
# each round measures both pairs, one after the other, in alternating
# order, so that a load from elsewhere on the machine weighs on both alike;
# the table then shows both and their ratio.
#
#   test/bench/apply_constraints.sh                 (50,000 rows, 3 rounds)
#   APPLY_BASELINE=/path/to/main BENCH_ROWS=20000 BENCH_ROUNDS=7 test/bench/apply_constraints.sh
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
WORK=$(mktemp -d /tmp/replstamp-bench.XXXXXX)
trap bench_cleanup EXIT
BASE=$((5400 + RANDOM % 500))
VERSIONS="new"
BIN_new=$(private_install "$WORK/new") || exit 1
if [ -n "${APPLY_BASELINE:-}" ]; then
	BIN_old=$(private_install_from "$APPLY_BASELINE" "$WORK/old" 0 0) || exit 1
	VERSIONS="old new"
fi
export PATH="$BIN_new:$PATH" PGHOST="$WORK" PGDATABASE=bench
unset PGUSER PGSERVICE

SCHEMA="CREATE EXTENSION replstamp;
CREATE TABLE plain (id int PRIMARY KEY, parent_id int, v int);
CREATE TABLE parent (id int PRIMARY KEY, v int);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, v int);
CREATE TABLE uniq (id int PRIMARY KEY, email text UNIQUE, v int);
SELECT replstamp.track(t::regclass) FROM unnest(ARRAY['plain', 'parent', 'child', 'uniq']) t;"

# Clusters a_<version> and b_<version>; b pulls from a.
declare -A PORT_A PORT_B
i=0
for v in $VERSIONS; do
	bin_var=BIN_$v
	PORT_A[$v]=$((BASE + i)); PORT_B[$v]=$((BASE + i + 1)); i=$((i + 2))
	for n in a b; do
		port=${PORT_A[$v]}; [ $n = b ] && port=${PORT_B[$v]}
		bench_initdb "$WORK/${n}_$v" "$port" "${CONF[@]}"
		"${!bin_var}/pg_ctl" -D "$WORK/${n}_$v" -l "$WORK/${n}_$v.log" -w start >/dev/null
		createdb -p "$port" bench
		psql -qX -p "$port" -c "$SCHEMA" >/dev/null
	done
	psql -qX -p "${PORT_B[$v]}" -c "SELECT replstamp.add_peer('a', 'host=$WORK port=${PORT_A[$v]} dbname=bench')" >/dev/null
	psql -qX -p "${PORT_A[$v]}" -c "INSERT INTO parent SELECT g, 0 FROM generate_series(1, 1000) g"
	psql -qX -p "${PORT_B[$v]}" -Atc "SELECT replstamp.sync('a')" >/dev/null
done

# Seconds one sync of b from a takes ($1: the version); checks it applied $2 changes.
timed_sync() {
	local v="$1" want="$2" t0 t1 got
	t0=$(date +%s.%N)
	got=$(psql -qX -p "${PORT_B[$v]}" -Atc "SELECT replstamp.sync('a')")
	t1=$(date +%s.%N)
	[ "$got" = "$want" ] || { say "sync applied $got changes, expected $want"; exit 1; }
	echo "$t1 - $t0" | bc -l
}

declare -A RATES
order="$VERSIONS"
for r in $(seq 1 "$ROUNDS"); do
	base=$(( (r - 1) * ROWS ))
	for v in $order; do
		for t in plain child uniq; do
			case $t in
				uniq) ins="INSERT INTO uniq SELECT g, 'e' || g || '@x', 0 FROM generate_series($base + 1, $base + $ROWS) g" ;;
				*) ins="INSERT INTO $t SELECT g, g % 1000 + 1, 0 FROM generate_series($base + 1, $base + $ROWS) g" ;;
			esac
			psql -qX -p "${PORT_A[$v]}" -c "$ins"
			s=$(timed_sync "$v" "$ROWS")
			RATES[$v-$t-insert]+="$(echo "$ROWS / $s" | bc -l) "
			psql -qX -p "${PORT_A[$v]}" -c "UPDATE $t SET v = v + 1 WHERE id > $base AND id <= $base + $ROWS"
			s=$(timed_sync "$v" "$ROWS")
			RATES[$v-$t-update]+="$(echo "$ROWS / $s" | bc -l) "
		done
	done
	order=$(echo $order | awk '{ for (i = NF; i > 0; i--) printf "%s%s", $i, (i > 1 ? " " : "") }')
	say "round $r of $ROUNDS done"
done

# Both nodes of each pair hold the same rows.
for v in $VERSIONS; do
	for t in plain child uniq; do
		q="SELECT count(*) || ':' || md5(string_agg(x::text, ',' ORDER BY id)) FROM $t x"
		[ "$(psql -qX -p "${PORT_A[$v]}" -Atc "$q")" = "$(psql -qX -p "${PORT_B[$v]}" -Atc "$q")" ] ||
			{ say "table $t differs between a and b ($v)"; exit 1; }
	done
done

med() { printf '%s\n' $1 | median; }
echo "changes/s applied by one sync, median of $ROUNDS rounds of $ROWS rows"
if [ -n "${APPLY_BASELINE:-}" ]; then
	printf '%-8s %-7s %12s %12s %8s\n' table op baseline this ratio
else
	printf '%-8s %-7s %12s\n' table op this
fi
for t in plain child uniq; do
	for op in insert update; do
		new=$(med "${RATES[new-$t-$op]}")
		if [ -n "${APPLY_BASELINE:-}" ]; then
			old=$(med "${RATES[old-$t-$op]}")
			printf '%-8s %-7s %12.0f %12.0f %8.2f   baseline: %s  this: %s\n' "$t" "$op" "$old" "$new" \
				"$(echo "$new / $old" | bc -l)" "$(printf '%.0f ' ${RATES[old-$t-$op]})" "$(printf '%.0f ' ${RATES[new-$t-$op]})"
		else
			printf '%-8s %-7s %12.0f   all rounds: %s\n' "$t" "$op" "$new" "$(printf '%.0f ' ${RATES[new-$t-$op]})"
		fi
	done
done

#!/usr/bin/env bash
# Does pruning keep the change log bounded, and what does it cost?  Three
# nodes (a, b, c), each pulling from the other two every second
# (replstamp.sync_interval = 1), all three writing under pgbench tpcb-like
# (scale BENCH_SCALE, pgbench_history given a bigserial primary key whose
# sequence starts at a different point on each node), pruning every
# PRUNE_INTERVAL seconds.  In one run:
#
# 1. churn: BENCH_SECONDS of writing with pruning on; every BENCH_SAMPLE
#    seconds, on node a: the changes it has stamped or pulled so far, the
#    rows and bytes (pg_total_relation_size) of replstamp.changes and
#    replstamp.row_version, the rows of the tracked tables, the conflicts
#    recorded (rows, and bytes of replstamp.conflict: each keeps a copy
#    of the version that lost).  Flat means the log follows the tables (about one change
#    per row: the latest change of each row is kept), not the number of
#    changes.  Meanwhile pg_stat_activity is sampled every second on every
#    node for a worker that is pruning.
# 2. TPS with pruning on and off, in the same setup: BENCH_ROUNDS rounds
#    of two BENCH_SEGMENT-second pgbench runs on the three nodes, one with
#    replstamp.prune_interval = PRUNE_INTERVAL and one with 0 (the order
#    alternates from round to round), the sum of the three nodes' TPS;
#    medians and their ratio.  Conflicts are kept SEGMENT_CONFLICT_RETENTION
#    here, so that each run with pruning on pays for forgetting its own
#    conflicts and for no other run's.
# 3. prune cost per removed change: after each run with pruning off,
#    SELECT replstamp.prune() on each node, timed (the syncs go on, the
#    writers have stopped); and the background estimate of step 1
#    (seconds a worker was seen pruning / changes removed).
#
# The machine this runs on is small and shared: read single figures as
# noisy, and look at the medians.
#
#   test/bench/prune_churn.sh        (scale 1, 1 client per node, 240 s of churn, 3 rounds of 2 x 30 s)
#   BENCH_SECONDS=60 BENCH_ROUNDS=1 BENCH_SEGMENT=15 test/bench/prune_churn.sh
#
#   BENCH_SECONDS   duration of the churn (default 240)
#   BENCH_SAMPLE    seconds between samples of the log (default 20)
#   BENCH_ROUNDS    rounds of the on/off comparison (default 3)
#   BENCH_SEGMENT   seconds of each on and off run (default 30)
#   BENCH_SCALE     pgbench scale (default 1)
#   BENCH_CLIENTS   pgbench clients per node (default 1)
#   PRUNE_INTERVAL  replstamp.prune_interval while pruning is on (default 5)
#   BENCH_SHARED_BUFFERS  shared_buffers of each node (default 1GB: the log,
#                   row_version and their indexes fit; with PostgreSQL's
#                   default of 128MB the prune reads and writes back pages)
#   CONFLICT_RETENTION  replstamp.conflict_retention in step 1 (default 60s: every write
#                   from another node that replaces a row's version is a
#                   conflict, and keeps the replaced change this long)
#   SEGMENT_CONFLICT_RETENTION  replstamp.conflict_retention during step 2
#                   (default 5s).  It must be well below BENCH_SEGMENT: a
#                   conflict is forgotten (and its change pruned) once the
#                   retention has passed, so with a longer one a run with
#                   pruning on would pay for the conflicts of the run before
#                   it, with pruning off.  After each run with pruning off,
#                   the nodes prune once more when its conflicts expired.
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/prune_churn.sh" "$@"

SECONDS_RUN=${BENCH_SECONDS:-240}
SAMPLE=${BENCH_SAMPLE:-20}
ROUNDS=${BENCH_ROUNDS:-3}
SEGMENT=${BENCH_SEGMENT:-30}
SCALE=${BENCH_SCALE:-1}
CLIENTS=${BENCH_CLIENTS:-1}
INTERVAL=${PRUNE_INTERVAL:-5}
RETENTION=${CONFLICT_RETENTION:-60s}
BUFFERS=${BENCH_SHARED_BUFFERS:-1GB}
RETENTION2=${SEGMENT_CONFLICT_RETENTION:-5s}
for v in $SECONDS_RUN $SAMPLE $ROUNDS $SEGMENT $SCALE $CLIENTS $INTERVAL; do
	case "$v" in ''|*[!0-9]*) say "prune_churn.sh: not a number: \"$v\""; exit 2 ;; esac
	[ "$v" -gt 0 ] || { say "prune_churn.sh: every setting must be above 0"; exit 2; }
done

CONF=("synchronous_commit = off" "shared_buffers = $BUFFERS" "max_wal_size = 2GB"
	"checkpoint_timeout = 30min" "max_worker_processes = 16" "replstamp.prune_interval = 0")
CONF+=("replstamp.conflict_retention = '$RETENTION'")
bench_cluster "${CONF[@]}"
PA=$PORT PB=$((PORT + 1)) PC=$((PORT + 2))
PORTS="$PA $PB $PC"
bench_trap_jobs
bench_node b "$PB" "${CONF[@]}"
bench_node c "$PC" "${CONF[@]}"

q() { local port="$1"; shift; psql -qXAt -v ON_ERROR_STOP=1 -p "$port" "$@"; }
name_of() { case "$1" in "$PA") echo a ;; "$PB") echo b ;; "$PC") echo c ;; esac; }
now() { date +%s.%N; }
RES="$WORK/results"
mkdir -p "$RES"

say "== setup: the pgbench tables on a, b and c, tracked; the data written on a and pulled by b and c"
i=0
for p in $PORTS; do
	i=$((i + 1))
	pgbench -i -I dtp -p "$p" bench >"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; exit 1; }
	q "$p" -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY" \
		-c "SELECT setval('pgbench_history_id_seq', $i * 1000000000000)" \
		-c "CREATE EXTENSION replstamp" \
		-c "SELECT replstamp.track(t::regclass) FROM unnest('{pgbench_accounts,pgbench_branches,pgbench_tellers,pgbench_history}'::text[]) t" >/dev/null
	for o in $PORTS; do
		[ "$o" = "$p" ] && continue
		q "$p" -c "SELECT replstamp.add_peer('$(name_of "$o")', 'host=$WORK port=$o dbname=bench')" >/dev/null
	done
done
q "$PA" -c "INSERT INTO pgbench_branches SELECT b, 0 FROM generate_series(1, $SCALE) b" \
	-c "INSERT INTO pgbench_tellers SELECT t, (t - 1) / 10 + 1, 0 FROM generate_series(1, 10 * $SCALE) t" \
	-c "INSERT INTO pgbench_accounts SELECT a, (a - 1) / 100000 + 1, 0 FROM generate_series(1, 100000 * $SCALE) a"
for p in $PB $PC $PA $PB $PC; do q "$p" -c "SELECT replstamp.sync_all()" >/dev/null; done

set_guc() {
	local p
	for p in $PORTS; do
		q "$p" -c "ALTER SYSTEM SET $1 = $2" -c "SELECT pg_reload_conf()" >/dev/null
	done
}
# Wait until no maintenance worker prunes anywhere (after prune_interval = 0).
quiet() {
	local p
	for p in $PORTS; do
		until [ "$(q "$p" -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'replstamp maintenance'")" = 0 ]; do
			sleep 0.2
		done
	done
}
set_guc replstamp.sync_interval 1
for p in $PORTS; do q "$p" -c "VACUUM ANALYZE" -c "CHECKPOINT"; done

# pgbench on the three nodes for $1 seconds; prints the sum of their TPS.
# A sync's page and a local transaction can deadlock on two rows; pgbench
# tries such a transaction again rather than stop the client.
bench3() {
	local secs="$1" extra="${2:-}" p pids=""
	for p in $PORTS; do
		pgbench -n -c "$CLIENTS" -j "$CLIENTS" -T "$secs" --max-tries=100 $extra -p "$p" bench \
			>"$WORK/pgbench.$p" 2>&1 &
		pids="$pids $!"
	done
	wait $pids
	for p in $PORTS; do sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$WORK/pgbench.$p"; done |
		awk '{ s += $1 } END { printf "%.0f\n", s }'
}

# What node a holds: seen (stamped here or pulled: the sum of its vector,
# every ID's serials being dense), changes rows and
# bytes, row_version rows and bytes, rows of the tracked tables, conflicts
# and their bytes (each keeps a copy of the version that lost).
sample() {
	q "$PA" -F ' ' -c "SELECT
		(SELECT sum(serial) FROM replstamp.vector),
		(SELECT count(*) FROM replstamp.changes),
		pg_total_relation_size('replstamp.changes'),
		(SELECT count(*) FROM replstamp.row_version),
		pg_total_relation_size('replstamp.row_version'),
		(SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM pgbench_branches)
		  + (SELECT count(*) FROM pgbench_tellers) + (SELECT count(*) FROM pgbench_history),
		(SELECT count(*) FROM replstamp.conflict),
		pg_total_relation_size('replstamp.conflict')"
}
# Every second until $1 exists: on each node, is a worker pruning?
prune_watch() {
	while [ ! -e "$1" ]; do
		for p in $PORTS; do
			q "$p" -c "SELECT count(*) FROM pg_stat_activity WHERE query = 'replstamp: pruning the change log' AND state = 'active'"
		done >>"$RES/busy"
		sleep 1
	done
}

echo "prune_churn: 3 nodes, pgbench tpcb-like scale $SCALE, $CLIENTS client(s) per node, sync every 1 s," \
	"prune every $INTERVAL s, conflict retention $RETENTION, shared_buffers $BUFFERS; a shared 2-core machine: figures are noisy"
echo
echo "== 1. the log on node a while a, b and c write for $SECONDS_RUN s, pruning on (a sample every $SAMPLE s)"
set_guc replstamp.prune_interval "$INTERVAL"
: >"$RES/busy"
prune_watch "$WORK/churn.done" &
watcher=$!
removed0=$(sample | awk '{ print $1 - $2 }')
bench3 "$SECONDS_RUN" "-P $SAMPLE" >"$RES/churn.tps" &
bencher=$!
printf '%6s %12s %10s %10s %12s %10s %10s %10s %10s %14s\n' "t (s)" "seen" "changes" "MB" "row_version" "MB" "rows" "conflicts" "MB" "changes/row"
start=$(now)
t=0
while [ "$t" -lt "$SECONDS_RUN" ]; do
	sleep "$SAMPLE"
	t=$(awk -v s="$start" -v n="$(now)" 'BEGIN { printf "%d", n - s }')
	sample | awk -v t="$t" '{
		printf "%6d %12d %10d %10.1f %12d %10.1f %10d %10d %10.1f %14.2f\n", t, $1, $2, $3 / 1048576, $4, $5 / 1048576, $6, $7, $8 / 1048576, $2 / $6
	}' | tee -a "$RES/samples"
done
wait "$bencher"
touch "$WORK/churn.done"
wait "$watcher"
end=$(now)
last=$(sample)
echo "$last" | awk -v r0="$removed0" -v busy="$(awk '{ s += $1 } END { print s + 0 }' "$RES/busy")" \
	-v secs="$(awk -v s="$start" -v e="$end" 'BEGIN { print e - s }')" -v tps="$(cat "$RES/churn.tps")" '{
	removed = $1 - $2 - r0;
	printf "churn: %.0f TPS (sum of 3 nodes); node a saw %d changes, holds %d (%.1f MB), removed %d\n", tps, $1, $2, $3 / 1048576, removed;
	printf "background pruning, all 3 nodes: a worker seen pruning in %d one-second samples of %.0f s x 3 nodes (%.1f %%)\n", busy, secs, 100 * busy / (3 * secs);
	if (removed > 0) printf "  about %.1f us of pruning per change removed (node a'"'"'s removals x 3)\n", busy * 1e6 / (3 * removed);
}'
# Flat: the log's growth against the growth of the tables and of the
# changes seen, between the first sample and the last.
awk 'NR == 1 { s1 = $2; c1 = $3; r1 = $7; b1 = $4 } { s2 = $2; c2 = $3; r2 = $7; b2 = $4 } END {
	printf "from the first sample to the last: changes seen +%d, log rows +%d, table rows +%d, log MB %+.1f\n", s2 - s1, c2 - c1, r2 - r1, b2 - b1;
	if (s2 > s1) printf "  log rows grew by %.3f per change seen (1.00 = nothing pruned; table rows grew by %.3f)\n", (c2 - c1) / (s2 - s1), (r2 - r1) / (s2 - s1);
}' "$RES/samples"
# Once the conflicts kept reach their steady state (the retention has
# passed), the log should grow no faster than the tables: what it holds
# beyond one change per row (what pullers lack, and what the next prune
# removes) stays level.
retention_s=$(q "$PA" -c "SELECT extract(epoch FROM interval '$RETENTION')::int")
awk -v from="$retention_s" '$1 >= from && !n++ { s1 = $2; c1 = $3; r1 = $7; t1 = $1; x1 = $3 - $7 }
	$1 >= from { s2 = $2; c2 = $3; r2 = $7; t2 = $1; x2 = $3 - $7 } END {
	if (n < 2) { printf "after the conflict retention (%d s): fewer than two samples, raise BENCH_SECONDS\n", from; exit }
	printf "after the conflict retention, from t = %d s to %d s: changes seen +%d, log rows +%d, table rows +%d\n", t1, t2, s2 - s1, c2 - c1, r2 - r1;
	printf "  log rows grew by %.3f per change seen (table rows by %.3f); log rows beyond the table rows: %d, then %d\n", (c2 - c1) / (s2 - s1), (r2 - r1) / (s2 - s1), x1, x2;
}' "$RES/samples"

echo
echo "== 2. TPS, pruning on against off: $ROUNDS rounds of two $SEGMENT-s runs, sum of 3 nodes (conflict retention $RETENTION2)"
echo "== 3. and, after each run with pruning off, replstamp.prune() on each node, timed"
set_guc replstamp.prune_interval 0
quiet
set_guc replstamp.conflict_retention "'$RETENTION2'"
retention2_s=$(q "$PA" -c "SELECT ceil(extract(epoch FROM interval '$RETENTION2'))::int")
for p in $PORTS; do q "$p" -c "SELECT replstamp.prune()" >/dev/null; done
for round in $(seq "$ROUNDS"); do
	if [ $((round % 2)) = 1 ]; then order="off on"; else order="on off"; fi
	for mode in $order; do
		if [ "$mode" = on ]; then
			set_guc replstamp.prune_interval "$INTERVAL"
		else
			set_guc replstamp.prune_interval 0
			quiet
		fi
		bench3 "$SEGMENT" >>"$RES/tps.$mode"
		if [ "$mode" = off ]; then
			for p in $PORTS; do
				t0=$(now)
				n=$(q "$p" -c "SELECT replstamp.prune()")
				t1=$(now)
				awk -v n="$n" -v a="$t0" -v b="$t1" -v node="$(name_of "$p")" -v r="$round" 'BEGIN {
					printf "  round %d, node %s: removed %d changes in %.0f ms: %.1f us per change\n", r, node, n, (b - a) * 1000, (n > 0 ? (b - a) * 1e6 / n : 0)
				}' | tee -a "$RES/cost"
			done
			# The conflicts this run recorded expire; the next run starts without them.
			sleep $((retention2_s + 1))
			for p in $PORTS; do q "$p" -c "SELECT replstamp.prune()" >/dev/null; done
		fi
	done
	echo "  round $round: on $(tail -1 "$RES/tps.on") TPS, off $(tail -1 "$RES/tps.off") TPS"
done
set_guc replstamp.prune_interval 0
on=$(median <"$RES/tps.on")
off=$(median <"$RES/tps.off")
cost=$(sed -n 's/.*: \([0-9.]*\) us per change$/\1/p' "$RES/cost" | median)
echo
echo "TPS of each round: on $(paste -sd' ' "$RES/tps.on"); off $(paste -sd' ' "$RES/tps.off")"
awk -v on="$on" -v off="$off" -v cost="$cost" 'BEGIN {
	printf "median TPS with pruning on %.0f, off %.0f: on / off = %.3f (target >= 0.95)\n", on, off, on / off;
	printf "replstamp.prune() cost, median of %s: %.1f us per removed change\n", "every node and round", cost;
}'

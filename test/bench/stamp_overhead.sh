#!/usr/bin/env bash
# What does stamping cost a write?  pgbench tpcb-like three ways in one run:
# plain, the four pgbench tables tracked by replstamp, and the same tables
# with an equivalent PL/pgSQL trigger writing the same log row.  Prints TPS,
# ratios and the cost per stamped row, the change log's bytes per row, the
# cost and log bytes of one INSERT of BENCH_ROWS narrow and of wide rows,
# and the memory a single UPDATE of BENCH_ROWS tracked rows takes.
#
# Each measurement runs BENCH_ROUNDS times (the three ways in turn) and the
# median is reported: single pgbench runs on 2 cores vary by 15 %.
#
#   test/bench/stamp_overhead.sh            (scale 10, 2 clients, 30 s, 3 rounds)
#   BENCH_SECONDS=5 BENCH_SCALE=2 BENCH_ROWS=100000 BENCH_ROUNDS=1 test/bench/stamp_overhead.sh
#   BENCH_SYNCHRONOUS_COMMIT=on test/bench/stamp_overhead.sh   (each commit
#       waits for its WAL flush, as by default; off shows the write path's
#       own cost)
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/stamp_overhead.sh" "$@"

SECONDS_RUN=${BENCH_SECONDS:-30}
SCALE=${BENCH_SCALE:-10}
CLIENTS=${BENCH_CLIENTS:-2}
ROWS=${BENCH_ROWS:-1000000}
ROUNDS=${BENCH_ROUNDS:-3}
SYNC_COMMIT=${BENCH_SYNCHRONOUS_COMMIT:-off}
case "$SYNC_COMMIT" in on|off) ;; *) say "stamp_overhead.sh: BENCH_SYNCHRONOUS_COMMIT is on or off"; exit 2 ;; esac

bench_cluster "synchronous_commit = $SYNC_COMMIT" "shared_buffers = 512MB" \
	"max_wal_size = 4GB" "checkpoint_timeout = 30min"

TABLES="'pgbench_accounts','pgbench_branches','pgbench_tellers','pgbench_history'"

prepare() {
	dropdb --if-exists --force bench
	createdb bench
	pgbench -i -q -s "$SCALE" bench >/dev/null 2>&1
	# pgbench_history has no primary key: give it one in every run alike.
	psql -qX -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY"
	psql -qX -c "CREATE EXTENSION replstamp"
}

setup_replstamp() {
	psql -qX -c "SELECT replstamp.track(t::regclass) FROM unnest(ARRAY[$TABLES]) t" >/dev/null
}

setup_plpgsql() {
	psql -qX <<'EOF'
CREATE SEQUENCE plog_serial;
CREATE TABLE plog (replica_id uuid, serial bigint, relation text, op text,
                   row_image jsonb, changed_at timestamptz,
                   PRIMARY KEY (replica_id, serial));
CREATE FUNCTION plog_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO plog VALUES ('5b0c0b8e-3c3e-4b7e-9a55-0c1f2e0d9a10', nextval('plog_serial'),
                           TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP,
                           CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE to_jsonb(NEW) END,
                           transaction_timestamp());
  RETURN NULL;
END $$;
EOF
	for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
		psql -qX -c "CREATE TRIGGER plog AFTER INSERT OR UPDATE OR DELETE ON $t FOR EACH ROW EXECUTE FUNCTION plog_stamp()"
	done
}

run() {
	psql -qX -c "VACUUM ANALYZE" -c "CHECKPOINT"
	pgbench -n -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_RUN" bench 2>/dev/null |
		sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}


echo "pgbench tpcb-like, scale $SCALE, $CLIENTS clients, $SECONDS_RUN s, synchronous_commit = $SYNC_COMMIT;" \
	"$ROUNDS rounds of the three runs in turn, medians"
: >"$WORK/plain.t"; : >"$WORK/rs.t"; : >"$WORK/pl.t"
for round in $(seq "$ROUNDS"); do
	prepare; run >>"$WORK/plain.t"
	prepare; setup_replstamp; run >>"$WORK/rs.t"
	prepare; setup_plpgsql; run >>"$WORK/pl.t"
done
tps_plain=$(median <"$WORK/plain.t"); tps_rs=$(median <"$WORK/rs.t"); tps_pl=$(median <"$WORK/pl.t")
echo "TPS of each round: plain $(paste -sd' ' "$WORK/plain.t"); replstamp $(paste -sd' ' "$WORK/rs.t"); PL/pgSQL $(paste -sd' ' "$WORK/pl.t")"
awk -v c="$CLIENTS" -v p="$tps_plain" -v r="$tps_rs" -v l="$tps_pl" 'BEGIN {
	# 4 stamped rows per transaction (3 UPDATEs, 1 INSERT), c clients in parallel
	printf "%-28s %10s %12s %16s\n", "", "TPS", "vs plain", "us per row";
	printf "%-28s %10.0f %12s %16s\n", "plain", p, "1.00", "-";
	printf "%-28s %10.0f %12.2f %16.1f\n", "replstamp (C trigger)", r, r / p, (1 / r - 1 / p) * 1e6 * c / 4;
	printf "%-28s %10.0f %12.2f %16.1f\n", "PL/pgSQL trigger", l, l / p, (1 / l - 1 / p) * 1e6 * c / 4;
	printf "replstamp per-row cost / PL/pgSQL per-row cost: %.2f\n", (1 / r - 1 / p) / (1 / l - 1 / p);
}'

# One client, one statement: the per-row cost without pgbench's noise.
# Narrow rows (an image of about 80 bytes, stored as it is) and wide ones
# (a 430-byte text column of words: an image the log stores compressed).
NARROW="repeat('x', 40)"
WIDE="'row ' || g || ': ' || repeat('lorem ipsum dolor sit amet ', 16)"
bulk() {
	local mode="$1" pad="${2:-$NARROW}"
	psql -qX -c "DROP TABLE IF EXISTS bulk" -c "CREATE TABLE bulk (id int PRIMARY KEY, v int, pad text)" >/dev/null
	case "$mode" in
		replstamp) psql -qX -c "SELECT replstamp.track('bulk')" >/dev/null ;;
		plpgsql) psql -qX -c "CREATE TRIGGER plog AFTER INSERT OR UPDATE OR DELETE ON bulk FOR EACH ROW EXECUTE FUNCTION plog_stamp()" ;;
	esac
	psql -qX -c "CHECKPOINT"
	psql -qXAt -c "SELECT coalesce(max(serial), 0) FROM replstamp.changes" >"$WORK/serial_before"
	psql -qXAt -c '\timing on' -c "INSERT INTO bulk SELECT g, 0, $pad FROM generate_series(1, $ROWS) g" |
		sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
	# The log rows' size (tuple, and its image), for the last replstamp run.
	[ "$mode" = replstamp ] &&
		psql -qXAt -F' ' -c "SELECT avg(pg_column_size(c.*))::int, avg(pg_column_size(row_image))::int FROM replstamp.changes c
		                     WHERE relation = 'public.bulk' AND serial > $(cat "$WORK/serial_before")" >"$WORK/log_row"
	return 0
}
for round in $(seq "$ROUNDS"); do
	bulk plain >>"$WORK/bplain.t"
	bulk replstamp >>"$WORK/brs.t"
	bulk plpgsql >>"$WORK/bpl.t"
done
ms_plain=$(median <"$WORK/bplain.t"); ms_rs=$(median <"$WORK/brs.t"); ms_pl=$(median <"$WORK/bpl.t")
awk -v n="$ROWS" -v p="$ms_plain" -v r="$ms_rs" -v l="$ms_pl" 'BEGIN {
	printf "one INSERT of %d rows (median of the rounds): plain %.0f ms, replstamp %.0f ms (+%.2f us/row), PL/pgSQL %.0f ms (+%.2f us/row); replstamp/PL/pgSQL per-row cost %.2f\n",
		n, p, r, (r - p) * 1000 / n, l, (l - p) * 1000 / n, (r - p) / (l - p);
}'
for round in $(seq "$ROUNDS"); do
	bulk plain "$WIDE" >>"$WORK/wplain.t"
	bulk replstamp "$WIDE" >>"$WORK/wrs.t"
done
ms_plain=$(median <"$WORK/wplain.t"); ms_rs=$(median <"$WORK/wrs.t")
awk -v n="$ROWS" -v p="$ms_plain" -v r="$ms_rs" -v b="$(cat "$WORK/log_row")" 'BEGIN {
	split(b, s, " ");
	printf "one INSERT of %d wide rows (a 430-byte text column): plain %.0f ms, replstamp %.0f ms (+%.2f us/row); a log row %d bytes, its image %d\n",
		n, p, r, (r - p) * 1000 / n, s[1], s[2];
}'

# Memory of one UPDATE of $ROWS rows, untracked and tracked: the peak of the
# backend's private (anonymous) memory, sampled while the statement runs.
peak_update() {
	local tracked="$1"
	psql -qX -c "DROP TABLE IF EXISTS m" \
		-c "CREATE TABLE m (id int PRIMARY KEY, v int, pad text)" \
		-c "INSERT INTO m SELECT g, 0, repeat('x', 40) FROM generate_series(1, $ROWS) g" \
		-c "VACUUM ANALYZE m"
	[ "$tracked" = yes ] && psql -qX -c "SELECT replstamp.track('m')" >/dev/null
	local fifo="$WORK/fifo"; rm -f "$fifo"; mkfifo "$fifo"
	psql -qXAt <"$fifo" >"$WORK/pid.out" &
	local psqlpid=$!
	exec 9>"$fifo"
	echo "SELECT pg_backend_pid();" >&9
	while ! grep -qE '^[0-9]+$' "$WORK/pid.out"; do sleep 0.05; done
	local pid; pid=$(grep -m1 -E '^[0-9]+$' "$WORK/pid.out")
	local base; base=$(awk '/RssAnon/ {print $2}' /proc/$pid/status)
	echo "UPDATE m SET v = v + 1; SELECT 'done';" >&9
	local peak=$base
	while ! grep -q done "$WORK/pid.out"; do
		local now; now=$(awk '/RssAnon/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
		[ "${now:-0}" -gt "$peak" ] && peak=$now
		sleep 0.02
	done
	exec 9>&-
	wait $psqlpid
	echo $(( (peak - base) / 1024 ))
}
mem_plain=$(peak_update no)
mem_tracked=$(peak_update yes)
echo "one UPDATE of $ROWS rows: backend private memory grew by $mem_plain MB untracked, $mem_tracked MB tracked"

# The log's size per stamp, on a run no prune meets (a prune deletes rows
# but leaves their space, which VACUUM gives back): the same tables,
# pruning off, 10,000 transactions.
prepare; setup_replstamp
psql -qX -c "ALTER SYSTEM SET replstamp.prune_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
pgbench -n -c "$CLIENTS" -j "$CLIENTS" -t $((10000 / CLIENTS)) bench >/dev/null 2>&1
stamps=$(psql -qXAt -c "SELECT count(*) FROM replstamp.changes")
bytes=$(psql -qXAt -c "SELECT pg_total_relation_size('replstamp.changes') / greatest(count(*), 1) FROM replstamp.changes")
psql -qX -c "ALTER SYSTEM RESET replstamp.prune_interval" -c "SELECT pg_reload_conf()" >/dev/null
echo "change log: $bytes bytes per stamped row (table + indexes + toast; $stamps stamps of pgbench, pruning off)"

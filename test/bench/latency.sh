#!/usr/bin/env bash
# How long from a commit on one node to the change being visible on its
# peer, next to PostgreSQL's logical replication, and what an idle mesh
# costs.  Four clusters on this machine (one clock), replstamp's defaults
# (no replstamp setting at all: the wake-ups and the 10 s fallback poll):
#
#   a  the origin: database bench, table lat tracked; database native, the
#      same table untracked (no replstamp there) in a publication
#   b  pulls from a                     (replstamp, one hop)
#   c  pulls from b                     (replstamp, relay a -> b -> c)
#   n  a subscription to a's native     (logical replication)
#
# On a, pgbench commits single-row INSERTs at a fixed rate into both
# databases at once, each row carrying clock_timestamp().  On b, c and n
# an ALWAYS trigger (it fires under replication too) records
# clock_timestamp() when the row is applied, in a table of its own; the
# latency of a row is the difference (the applying transaction commits
# right after: this leaves out its commit, well under a millisecond with
# synchronous_commit = off).  p50, p99 and max per rate, and per
# LAT_BUCKET seconds of the run at the highest rate, to show whether the
# lag stays flat.
#
# Then the idle cost: a, b and c made a full mesh (each pulls from the
# other two), left alone LAT_SETTLE seconds, then LAT_IDLE seconds of CPU
# of every process of the three clusters: the postmaster's own and its
# reaped children's ticks (/proc/PID/stat utime, stime, cutime, cstime)
# plus those of the children alive at either end.
#
#   test/bench/latency.sh                     (20/s and 500/s, 60 s each, idle 60 s)
#   LAT_SECONDS=20 LAT_IDLE=30 test/bench/latency.sh
#
#   LAT_RATES     commits per second, one run each (default "20 500")
#   LAT_SECONDS   length of each run (default 60)
#   LAT_BUCKET    seconds per line of the lag-over-time table (default 10)
#   LAT_SETTLE    seconds the idle mesh is left before measuring (default 15)
#   LAT_IDLE      seconds of idle CPU measured (default 60)
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/latency.sh" "$@"

RATES=${LAT_RATES:-20 500}
SECS=${LAT_SECONDS:-60}
BUCKET=${LAT_BUCKET:-10}
SETTLE=${LAT_SETTLE:-15}
IDLE=${LAT_IDLE:-60}
for v in $RATES $SECS $BUCKET $SETTLE $IDLE; do
	case "$v" in ''|*[!0-9]*) say "latency.sh: not a number: \"$v\""; exit 2 ;; esac
done

CONF=("synchronous_commit = off")
bench_cluster "${CONF[@]}" "wal_level = logical"
PA=$PORT PB=$((PORT + 1)) PC=$((PORT + 2)) PN=$((PORT + 3))
bench_trap_jobs
bench_node b "$PB" "${CONF[@]}"
bench_node c "$PC" "${CONF[@]}"
bench_node n "$PN" "${CONF[@]}"

q() { local port="$1"; shift; psql -qXAt -v ON_ERROR_STOP=1 -p "$port" "$@"; }
conn() { echo "host=$WORK port=$1 dbname=bench"; }

TABLE="CREATE TABLE lat (id bigint PRIMARY KEY, rate int, origin_at timestamptz NOT NULL)"
SEEN="CREATE TABLE seen (id bigint PRIMARY KEY, seen_at timestamptz NOT NULL);
CREATE FUNCTION note_seen() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN INSERT INTO public.seen VALUES (NEW.id, clock_timestamp()); RETURN NULL; END \$\$;
CREATE TRIGGER seen AFTER INSERT ON lat FOR EACH ROW EXECUTE FUNCTION note_seen();
ALTER TABLE lat ENABLE ALWAYS TRIGGER seen;"

for p in $PA $PB $PC; do
	q "$p" -c "CREATE EXTENSION replstamp" -c "$TABLE" -c "SELECT replstamp.track('lat')" >/dev/null
done
q "$PA" -c "CREATE SEQUENCE lat_id"
for p in $PB $PC; do q "$p" -c "$SEEN"; done
q "$PB" -c "SELECT replstamp.add_peer('a', '$(conn "$PA")')" >/dev/null
q "$PC" -c "SELECT replstamp.add_peer('b', '$(conn "$PB")')" >/dev/null

createdb -p "$PA" native
q "$PA" -d native -c "$TABLE" -c "CREATE SEQUENCE lat_id" -c "CREATE PUBLICATION lat FOR TABLE lat"
q "$PN" -c "$TABLE" -c "$SEEN"
q "$PN" -c "CREATE SUBSCRIPTION lat CONNECTION 'host=$WORK port=$PA dbname=native' PUBLICATION lat"

# Until every replstamp node has a connection waiting on its peer and the
# subscription is streaming.
for i in $(seq 600); do
	ok=$(q "$PB" -c "SELECT coalesce(bool_and(wakeups), false) FROM replstamp.peers")$(q "$PC" -c "SELECT coalesce(bool_and(wakeups), false) FROM replstamp.peers")$(q "$PA" -d native -c "SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming'")
	[ "$ok" = ttt ] && break
	sleep 0.1
done
[ "$ok" = ttt ] || { say "latency.sh: the nodes did not get ready"; exit 1; }

cat >"$WORK/insert.sql" <<'EOF'
INSERT INTO lat VALUES (nextval('lat_id'), :rate, clock_timestamp());
EOF

wait_rows() {
	local port="$1" db="$2" want="$3" got=0
	for i in $(seq 1200); do
		got=$(q "$port" -d "$db" -c "SELECT count(*) FROM seen")
		[ "$got" -ge "$want" ] && return 0
		sleep 0.1
	done
	say "latency.sh: port $port has $got of $want rows"
	[ "$db" = bench ] && q "$port" -c "SELECT name, status, last_error FROM replstamp.peers" >&2
	return 1
}

stats() {   # port rate -> "p50 p99 max" in ms
	q "$1" -c "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || ' ' ||
	                  round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) || ' ' ||
	                  round(max(ms)::numeric, 1)
	             FROM (SELECT extract(epoch FROM s.seen_at - l.origin_at) * 1000 AS ms
	                     FROM lat l JOIN seen s USING (id) WHERE l.rate = $2) x"
}

echo "commit-to-visible latency, ms (one clock; replstamp with its defaults; synchronous_commit = off)"
printf '%-8s %-28s %8s %8s %8s %8s\n' rate path rows p50 p99 max
total=0
for rate in $RATES; do
	clients=$(( rate > 100 ? 2 : 1 ))
	pgbench -n -p "$PA" -c "$clients" -j "$clients" -R "$rate" -T "$SECS" -D rate="$rate" \
		-f "$WORK/insert.sql" bench >"$WORK/pgbench_rs.$rate" 2>&1 &
	rs=$!
	pgbench -n -p "$PA" -c "$clients" -j "$clients" -R "$rate" -T "$SECS" -D rate="$rate" \
		-f "$WORK/insert.sql" native >"$WORK/pgbench_native.$rate" 2>&1 &
	nat=$!
	wait "$rs" "$nat"
	total=$(q "$PA" -c "SELECT count(*) FROM lat")
	ntotal=$(q "$PA" -d native -c "SELECT count(*) FROM lat")
	wait_rows "$PB" bench "$total"
	wait_rows "$PC" bench "$total"
	wait_rows "$PN" bench "$ntotal"
	rows=$(q "$PA" -c "SELECT count(*) FROM lat WHERE rate = $rate")
	nrows=$(q "$PA" -d native -c "SELECT count(*) FROM lat WHERE rate = $rate")
	printf '%-8s %-28s %8s %8s %8s %8s\n' "$rate/s" "replstamp a -> b" "$rows" $(stats "$PB" "$rate")
	printf '%-8s %-28s %8s %8s %8s %8s\n' "$rate/s" "replstamp a -> b -> c" "$rows" $(stats "$PC" "$rate")
	printf '%-8s %-28s %8s %8s %8s %8s\n' "$rate/s" "logical replication a -> n" "$nrows" $(stats "$PN" "$rate")
	last=$rate
done

echo
echo "lag over the run at $last/s, per $BUCKET s of commit time on a: p50 / max ms"
printf '%-8s %-20s %-20s %-20s\n' second "a -> b" "a -> b -> c" "logical a -> n"
bucket_sql="SELECT floor(extract(epoch FROM l.origin_at - min(l.origin_at) OVER ()) / $BUCKET)::int * $BUCKET AS b,
                   extract(epoch FROM s.seen_at - l.origin_at) * 1000 AS ms
              FROM lat l JOIN seen s USING (id) WHERE l.rate = $last"
buckets() {
	q "$1" -F' ' -c "SELECT b, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || ' / ' || round(max(ms)::numeric, 1)
	                   FROM ($bucket_sql) x GROUP BY b ORDER BY b"
}
join -a1 <(buckets "$PB") <(buckets "$PC" | sed 's| / |/|') | join -a1 - <(buckets "$PN" | sed 's| / |/|') |
	awk '{ printf "%-8s %-20s %-20s %-20s\n", $1, $2 " " $3 " " $4, $5, $6 }'

# --- Idle: a full mesh of a, b and c.
q "$PN" -c "DROP SUBSCRIPTION lat" >/dev/null
pg_ctl -D "$WORK/n" -m fast stop >/dev/null
q "$PA" -c "SELECT replstamp.add_peer('b', '$(conn "$PB")'), replstamp.add_peer('c', '$(conn "$PC")')" >/dev/null
q "$PB" -c "SELECT replstamp.add_peer('c', '$(conn "$PC")')" >/dev/null
q "$PC" -c "SELECT replstamp.add_peer('a', '$(conn "$PA")')" >/dev/null
sleep "$SETTLE"

ticks() {   # every process of the clusters in $WORK/data, b and c
	local total=0 pm pid
	for d in "$WORK/data" "$WORK/b" "$WORK/c"; do
		pm=$(head -1 "$d/postmaster.pid")
		# utime stime cutime cstime of the postmaster (reaped children included)
		total=$(( total + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pm/stat") ))
		for pid in $(pgrep -P "$pm"); do
			[ -r "/proc/$pid/stat" ] && total=$(( total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0) ))
		done
	done
	echo "$total"
}
hz=$(getconf CLK_TCK)
t0=$(ticks)
sleep "$IDLE"
t1=$(ticks)
echo
awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$IDLE" 'BEGIN {
	printf "idle three-node mesh (each node pulls from the other two): %d ticks in %d s = %.2f %% of one core\n",
		d, s, d / hz / s * 100 }'

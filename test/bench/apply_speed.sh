#!/usr/bin/env bash
# How fast does a peer apply a backlog, next to PostgreSQL's own logical
# replication set up as its users set it up?  In one run, three clusters
# with the same pgbench tables (scale BENCH_SCALE, pgbench_history given a
# bigserial primary key):
#
#   a  the origin, wal_level = logical, with two databases made from the
#      same template: "bench", where replstamp tracks the four tables, and
#      "nbench", where nothing is tracked (no replstamp at all) and a
#      publication of the four tables is what a native user would have
#   b  the replstamp puller: the same tables tracked, peer 'a' (bench)
#   c  the native copy: the same tables, not tracked, a subscription to
#      a's nbench (a third cluster rather than a second database on b, so
#      that the two appliers share no WAL, buffers or checkpoints, and b's
#      replstamp launcher and the TPS measurement below see nothing of the
#      native one)
#
# For each backlog in APPLY_BACKLOGS (row changes; pgbench tpcb-like makes 4
# per transaction: 3 UPDATEs and 1 INSERT), starting from the same data on
# a, b and c: BENCH_CLIENTS clients run backlog / 4 transactions on a's
# bench, then c's subscription is created (copy_data = false, disabled: its
# slot starts here, so it decodes none of the tracked stream's WAL) and
# the same pgbench run (the same --random-seed) writes the same stream
# into a's nbench.  Then, one after the other (the order alternates between
# rounds), c's subscription is enabled and timed until c has applied the
# last transaction (and, separately, until the slot's confirmed_flush_lsn
# on a passes the end of the stream), and ONE SELECT replstamp.sync('a') on
# b is timed.  Both are timed to the same point: the changes applied and
# visible.  Afterwards every table of b is compared with a's bench and
# every table of c with a's nbench (md5 of the rows in key order).
#
# Fairness, on both sides: synchronous_commit = off on every node (a
# subscription's apply worker has it by default); the waits poll with
# short transactions, never one that holds a snapshot (an open snapshot on
# c stops pruning there, which made the native apply twice as slow in
# earlier versions of this script); each apply has a cluster of its own.
#
# Also: one transaction of APPLY_BIG_TX changes (an UPDATE of that many
# pgbench_accounts rows), which replstamp applies whole, as one local
# transaction, and native replication too: time and peak memory of each.
# Also: the same for a hot-row stream of APPLY_HOT_BACKLOG changes (every
# transaction updates one of the BENCH_SCALE rows of pgbench_branches four
# times: the same shape of transaction, only on 10 rows), the peak memory
# of the syncing process on b during the largest backlog (and of c's apply
# worker), and pgbench TPS on another database of b while b applies the
# largest backlog, against the same pgbench with no sync running, for each
# replstamp.sync_delay in APPLY_LOAD_DELAYS (with the changes/s the sync
# applies meanwhile: the delay trades catch-up speed for the local load).
#
# synchronous_commit = off on every node, as a subscription's apply worker
# has by default.  A sync whose process grows past APPLY_MAX_MB of private
# memory is cancelled (and reported as such) rather than left to the OOM
# killer, which would also hit whatever else runs on the machine.
#
#   test/bench/apply_speed.sh        (10k, 100k and 1M changes, hot rows 100k, 1 round)
#   APPLY_BACKLOGS="10000 40000" APPLY_HOT_BACKLOG=40000 test/bench/apply_speed.sh
#
#   APPLY_BACKLOGS      backlogs in row changes (default "10000 100000 1000000")
#   APPLY_HOT_BACKLOG   the hot-row backlog (default 100000; 0 skips it)
#   APPLY_BIG_TX        changes of the one large transaction (default 1000000, at most
#                       the 100000 x BENCH_SCALE accounts; 0 skips it)
#   APPLY_LOAD_SECONDS  duration of each pgbench on b for the TPS ratio (default 10)
#   APPLY_LOAD_DELAYS   replstamp.sync_delay values (ms) the TPS ratio is measured
#                       with, each on its own (default "0 10 25 50")
#   APPLY_MAX_MB        cancel a sync whose process passes this (default 4096)
#   APPLY_B_CONF        one more postgresql.conf line for b, the replstamp puller
#                       (e.g. "replstamp.sync_batch_size = 10000"; default none)
#   BENCH_ROUNDS        rounds, medians when > 1 (default 1: this is slow)
#   BENCH_SCALE         pgbench scale (default 10)
#   BENCH_CLIENTS       pgbench clients (default 2)
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/apply_speed.sh" "$@"

BACKLOGS=${APPLY_BACKLOGS:-10000 100000 1000000}
HOT=${APPLY_HOT_BACKLOG:-100000}
BIG=${APPLY_BIG_TX:-1000000}
LOAD_SECONDS=${APPLY_LOAD_SECONDS:-10}
LOAD_DELAYS=${APPLY_LOAD_DELAYS:-0 10 25 50}
MAX_MB=${APPLY_MAX_MB:-4096}
ROUNDS=${BENCH_ROUNDS:-1}
SCALE=${BENCH_SCALE:-10}
CLIENTS=${BENCH_CLIENTS:-2}
for v in $BACKLOGS $HOT $BIG $LOAD_SECONDS $LOAD_DELAYS $MAX_MB $ROUNDS $SCALE $CLIENTS; do
	case "$v" in ''|*[!0-9]*) say "apply_speed.sh: not a number: \"$v\""; exit 2 ;; esac
done
for v in $LOAD_SECONDS $ROUNDS $SCALE $CLIENTS; do
	[ "$v" -gt 0 ] || { say "apply_speed.sh: APPLY_LOAD_SECONDS, BENCH_ROUNDS, BENCH_SCALE and BENCH_CLIENTS must be above 0"; exit 2; }
done
# Whole transactions for every client: round each backlog to a multiple of
# 4 changes x CLIENTS.
whole_tx() { echo $(( ($1 + 2 * CLIENTS) / (4 * CLIENTS) * 4 * CLIENTS )); }
list=""
for n in $BACKLOGS; do list="$list $(whole_tx "$n")"; done
BACKLOGS=$(echo $list)
[ "$HOT" -gt 0 ] && HOT=$(whole_tx "$HOT")
[ -n "$BACKLOGS" ] || { say "apply_speed.sh: APPLY_BACKLOGS is empty"; exit 2; }
LARGEST=$(printf '%s\n' $BACKLOGS | sort -n | tail -1)
SMALLEST=$(printf '%s\n' $BACKLOGS | sort -n | head -1)

# No background sync on b (sync_interval = 0 also stops the wake-ups): the
# one timed replstamp.sync() pulls the whole backlog.
# No pruning (test/bench/prune_churn.sh measures it): a's log must hold
# the whole stream, as the publication's WAL does, or b would pull less.
CONF=("synchronous_commit = off" "shared_buffers = 512MB" "max_wal_size = 4GB" "replstamp.sync_interval = 0"
	"checkpoint_timeout = 30min" "replstamp.prune_interval = 0")
bench_cluster "${CONF[@]}" "wal_level = logical"
PA=$PORT PB=$((PORT + 1)) PC=$((PORT + 2))
bench_trap_jobs
bench_node b "$PB" "${CONF[@]}" ${APPLY_B_CONF:+"$APPLY_B_CONF"}
# PostgreSQL 15's logical replication launcher starts workers at most once
# per wal_retrieve_retry_interval (5 s) after it last looked: enabling the
# subscription a few seconds after the previous measurement disabled it
# would wait for that, which a real stream never does.
bench_node c "$PC" "${CONF[@]}" "wal_retrieve_retry_interval = 100ms"

q() { local port="$1"; shift; psql -qXAt -v ON_ERROR_STOP=1 -p "$port" "$@"; }
qa() { q "$PA" "$@"; }
qb() { q "$PB" "$@"; }
qc() { q "$PC" "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
RES="$WORK/results"
mkdir -p "$RES"
record() { echo "$3" >>"$RES/$1.$2"; }           # record KIND.N METRIC VALUE
med() { [ -f "$RES/$1.$2" ] && median <"$RES/$1.$2" || true; }
rounds_of() { [ -f "$RES/$1.$2" ] && paste -sd' ' "$RES/$1.$2" || echo "-"; }

TABLES="pgbench_accounts pgbench_branches pgbench_tellers pgbench_history"
TRACK="SELECT replstamp.track(t::regclass) FROM unnest('{pgbench_accounts,pgbench_branches,pgbench_tellers,pgbench_history}'::text[]) t"

say "== initial data: pgbench -i -s $SCALE on a, b and c, kept as template database tpl"
pgbench_init() {
	createdb -p "$1" "$2"
	pgbench -i -q -s "$SCALE" -p "$1" "$2" >"$WORK/init.log" 2>&1 || {
		cat "$WORK/init.log" >&2; return 1
	}
}
for p in $PA $PB $PC; do
	pgbench_init "$p" tpl
	# pgbench_history has no primary key; a marker table ends the native
	# stream (published, not tracked: replstamp never sees it).
	q "$p" -d tpl -c "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY" \
		-c "CREATE TABLE apply_marker (id int PRIMARY KEY)" -c "VACUUM ANALYZE"
done
# Another table set on b for the TPS measurement.
pgbench_init "$PB" load

cat >"$WORK/hot.sql" <<'EOF'
\set bid random(1, :nbranches)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
END;
EOF

wait_ready() {
	local i
	for i in $(seq 600); do pg_isready -q -p "$1" && return 0; sleep 0.1; done
	say "the cluster on port $1 did not come back"; return 1
}

# A fresh database "bench" from the template on one node, with its part of
# the setup.
fresh() {
	local node="$1" port
	case "$node" in a) port=$PA ;; b) port=$PB ;; c) port=$PC ;; esac
	wait_ready "$port"
	q "$port" -d postgres -c "DROP DATABASE IF EXISTS bench WITH (FORCE)" \
		-c "CREATE DATABASE bench TEMPLATE tpl STRATEGY FILE_COPY"
	case "$node" in
	a)	qa -c "CREATE EXTENSION replstamp" -c "$TRACK" >/dev/null
		# The native origin: nothing tracked, only the publication.
		qa -d postgres -c "DROP DATABASE IF EXISTS nbench WITH (FORCE)" \
			-c "CREATE DATABASE nbench TEMPLATE tpl STRATEGY FILE_COPY"
		qa -d nbench -c "CREATE PUBLICATION apply_bench FOR TABLE $(echo $TABLES | tr ' ' ','), apply_marker" ;;
	b)	qb -c "CREATE EXTENSION replstamp" -c "$TRACK" \
			-c "SELECT replstamp.add_peer('a', 'host=$WORK port=$PA dbname=bench')" >/dev/null ;;
	esac
	q "$port" -c "CHECKPOINT"
}

# c's subscription to a's nbench, disabled: its slot starts at this point,
# after the tracked stream and before the native one.
subscribe_c() {
	qc -c "SET client_min_messages = warning" -c "CREATE SUBSCRIPTION apply_bench CONNECTION 'host=$WORK port=$PA dbname=nbench'
		PUBLICATION apply_bench WITH (enabled = false, copy_data = false)"
}

fresh_all() {
	# The subscription goes first: it drops its slot, which holds a's database.
	if [ -n "$(qc -d postgres -c "SELECT 1 FROM pg_subscription WHERE subname = 'apply_bench'")" ]; then
		qc -c "SET client_min_messages = warning" -c "DROP SUBSCRIPTION apply_bench"
	fi
	fresh a; fresh b; fresh c
}

# md5 of each table's rows in key order, one line per table.
sums() {
	q "$@" -c "SELECT 'pgbench_accounts', md5(string_agg(md5(t::text), '' ORDER BY aid)) FROM pgbench_accounts t
		UNION ALL SELECT 'pgbench_branches', md5(string_agg(md5(t::text), '' ORDER BY bid)) FROM pgbench_branches t
		UNION ALL SELECT 'pgbench_tellers', md5(string_agg(md5(t::text), '' ORDER BY tid)) FROM pgbench_tellers t
		UNION ALL SELECT 'pgbench_history', md5(string_agg(md5(t::text), '' ORDER BY hid)) FROM pgbench_history t"
}
# "OK", or "DIFFERENT (tables that differ)".
compare() {
	local d
	d=$(diff <(printf '%s\n' "$1") <(printf '%s\n' "$2") | sed -n 's/^> \([a-z_]*\)|.*/\1/p' | paste -sd,) || true
	[ -z "$d" ] && echo OK || echo "DIFFERENT ($d)"
}

# Samples, every 0.1 s until $3.stop appears, the memory of the processes
# that query $2 on port $1 finds (rows "pid|backend_type"; asked again
# every second, so a process that takes the work over later is found too).
# Writes "peak-RssAnon-kB peak-VmHWM-kB backend_types" to $3.  With $4 = 1,
# cancels a process whose RssAnon passes APPLY_MAX_MB and notes it in
# $3.cancelled.
sampler() {
	set +e
	local port="$1" sql="$2" out="$3" guard="$4"
	local anon=0 hwm=0 seen="" types="" n=0 pid type k v a
	while [ ! -e "$out.stop" ]; do
		if [ $((n % 10)) -eq 0 ] || [ -z "$seen" ]; then
			while IFS='|' read -r pid type; do
				[ -n "$pid" ] || continue
				case " $seen " in *" $pid "*) ;; *)
					seen="$seen $pid"
					case ",$types," in *",$type,"*) ;; *) types="${types:+$types,}$type" ;; esac ;;
				esac
			done < <(q "$port" -c "$sql" 2>/dev/null)
		fi
		for pid in $seen; do
			[ -r "/proc/$pid/status" ] || continue
			a=0
			while read -r k v _; do
				case "$k" in
				RssAnon:) a=$v; [ "$v" -gt "$anon" ] && anon=$v ;;
				VmHWM:) [ "$v" -gt "$hwm" ] && hwm=$v ;;
				esac
			done <"/proc/$pid/status" 2>/dev/null
			if [ "$guard" = 1 ] && [ "$a" -gt $((MAX_MB * 1024)) ] && [ ! -e "$out.cancelled" ]; then
				echo "$pid $((a / 1024))" >"$out.cancelled"
				q "$port" -c "SELECT pg_cancel_backend($pid)" >/dev/null 2>&1
			fi
		done
		n=$((n + 1))
		sleep 0.1
	done
	echo "$anon $hwm ${types:-none found}" >"$out"
}
start_sampler() {
	rm -f "$3" "$3.stop" "$3.cancelled"
	sampler "$@" &
	SAMPLER=$!
}
stop_sampler() { touch "$1.stop"; wait "$SAMPLER"; }
# The process doing a sync on b: the backend of the session that calls it
# (found by its application_name, which this script sets: a sync may report
# its progress in pg_stat_activity.query), or a replstamp worker other than
# the launcher and the start-up identity checks, should the sync move there.
SYNC_PIDS="SELECT pid, backend_type FROM pg_stat_activity
	WHERE pid <> pg_backend_pid() AND (datname = 'bench' OR datname IS NULL) AND
	(application_name = 'apply_speed_sync' OR
	 (backend_type LIKE 'replstamp%' AND backend_type NOT IN ('replstamp launcher', 'replstamp identity check')))"
sync_b() { PGAPPNAME=apply_speed_sync qb -c "SELECT replstamp.sync('a')"; }
APPLY_PIDS="SELECT pid, 'logical replication worker' FROM pg_stat_subscription WHERE subname = 'apply_bench' AND pid IS NOT NULL"

# The stream on a's database DB: KIND (pgbench, hot or bigtx) and N
# changes, from pgbench's random seed SEED.  Prints seconds.
stream() {
	local kind="$1" n="$2" db="$3" seed="$4" t0 t1 tx
	tx=$((n / 4 / CLIENTS))
	t0=$(now)
	if [ "$kind" = bigtx ]; then
		qa -d "$db" -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $n"
		secs "$t0" "$(now)"
		return 0
	elif [ "$kind" = pgbench ]; then
		pgbench -p "$PA" -n -c "$CLIENTS" -j "$CLIENTS" -t "$tx" --random-seed="$seed" "$db" >"$WORK/stream.out" 2>&1
	else
		pgbench -p "$PA" -n -c "$CLIENTS" -j "$CLIENTS" -t "$tx" --random-seed="$seed" -D nbranches="$SCALE" \
			-f "$WORK/hot.sql" "$db" >"$WORK/stream.out" 2>&1
	fi
	t1=$(now)
	grep -q "number of transactions actually processed: $((tx * CLIENTS))/$((tx * CLIENTS))" "$WORK/stream.out" || {
		say "pgbench on a did not complete its transactions:"; cat "$WORK/stream.out" >&2; return 1
	}
	secs "$t0" "$t1"
}

# Native: enable the subscription, wait on a for confirmed_flush_lsn to
# pass the end of the stream and on c for the marker written after it.
# Sets NATIVE_FLUSH and NATIVE_APPLIED (seconds).
native() {
	local end t0 waiter
	end=$(qa -d nbench -c "SELECT pg_current_wal_insert_lsn()")
	# pg_current_wal_insert_lsn(), not pg_current_wal_lsn(): with
	# synchronous_commit = off the write position may still be behind the
	# last commits.  The marker's transaction puts a record beyond it, and
	# commits synchronously: a walsender sends only flushed WAL (a sync's
	# peer flushes by itself), so neither side waits for a's walwriter.
	qa -d nbench -c "SET synchronous_commit = on" -c "INSERT INTO apply_marker VALUES (1)"
	start_sampler "$PC" "$APPLY_PIDS" "$WORK/mem.native" 0
	t0=$(now)
	qc -c "ALTER SUBSCRIPTION apply_bench ENABLE"
	# Each wait commits between its looks: a DO block that never commits
	# keeps its first snapshot, and on c that would stop the pruning the
	# apply worker's updates rely on.
	(qc -c "DO \$\$ BEGIN
		WHILE NOT EXISTS (SELECT FROM apply_marker) LOOP
			IF clock_timestamp() > statement_timestamp() + interval '2 hours' THEN
				RAISE 'native replication did not apply the stream in 2 hours: see $WORK/c.log'; END IF;
			COMMIT;
			PERFORM pg_sleep(0.01);
		END LOOP; END \$\$" && now >"$WORK/native.applied") &
	waiter=$!
	qa -c "DO \$\$ BEGIN
		WHILE coalesce((SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'apply_bench'), '0/0') < '$end' LOOP
			IF clock_timestamp() > statement_timestamp() + interval '2 hours' THEN
				RAISE 'the subscription did not confirm the stream in 2 hours: see $WORK/c.log'; END IF;
			COMMIT;
			PERFORM pg_sleep(0.01);
		END LOOP; END \$\$"
	NATIVE_FLUSH=$(secs "$t0" "$(now)")
	wait "$waiter"
	NATIVE_APPLIED=$(secs "$t0" "$(cat "$WORK/native.applied")")
	qc -c "ALTER SUBSCRIPTION apply_bench DISABLE"
	stop_sampler "$WORK/mem.native"
}

# replstamp: one sync of the whole backlog.  Sets RS_SECS and RS_GOT, or
# RS_ERROR.
replstamp_sync() {
	local t0 t1
	RS_SECS="" RS_GOT="" RS_ERROR=""
	start_sampler "$PB" "$SYNC_PIDS" "$WORK/mem.rs" 1
	t0=$(now)
	if RS_GOT=$(sync_b 2>"$WORK/sync.err"); then
		t1=$(now)
		RS_SECS=$(secs "$t0" "$t1")
	else
		# psql turns a Ctrl-C into a cancel and exits normally, so bash
		# runs no INT trap: a cancel this script did not send is the user's.
		if grep -q 'canceling statement due to user request' "$WORK/sync.err" &&
			[ ! -e "$WORK/mem.rs.cancelled" ]; then
			say "interrupted"; exit 130
		fi
		RS_ERROR=$(grep -m1 -E 'ERROR|FATAL|terminated|closed' "$WORK/sync.err" || head -1 "$WORK/sync.err")
		RS_ERROR="${RS_ERROR:-psql failed}"
	fi
	stop_sampler "$WORK/mem.rs"
	if [ -e "$WORK/mem.rs.cancelled" ]; then
		RS_ERROR="cancelled by this benchmark: its process passed $(cut -d' ' -f2 "$WORK/mem.rs.cancelled") MB (APPLY_MAX_MB=$MAX_MB)"
		RS_SECS=""
	fi
	return 0
}

# One measurement: fresh data, the stream, native and replstamp in turn
# (the order alternates between rounds), the tables compared.
measure() {
	local kind="$1" n="$2" round="$3" key="$1.$2" st nst held a_sums first
	local r_anon r_hwm r_proc n_anon n_hwm n_proc
	fresh_all
	st=$(stream "$kind" "$n" bench "$round")
	held=$(qa -c "SELECT count(*) FROM replstamp.changes")
	[ "$held" = "$n" ] || say "note: a holds $held stamped changes after a stream of $n"
	subscribe_c
	nst=$(stream "$kind" "$n" nbench "$round")
	q "$PA" -d nbench -c "CHECKPOINT"
	if [ $((round % 2)) = 1 ]; then
		native; replstamp_sync; first=native
	else
		replstamp_sync; native; first=replstamp
	fi
	read -r r_anon r_hwm r_proc <"$WORK/mem.rs"
	read -r n_anon n_hwm n_proc <"$WORK/mem.native"
	record "$key" rs_anon $((r_anon / 1024)); record "$key" rs_hwm $((r_hwm / 1024))
	record "$key" native_anon $((n_anon / 1024)); record "$key" native_hwm $((n_hwm / 1024))
	a_sums=$(sums "$PA")
	local rs_check="not compared (sync failed)" native_check
	wait_ready "$PB"
	[ -z "$RS_ERROR" ] && rs_check=$(compare "$a_sums" "$(sums "$PB")")
	native_check=$(compare "$(sums "$PA" -d nbench)" "$(sums "$PC")")
	record "$key" native_flush "$NATIVE_FLUSH"
	record "$key" native_applied "$NATIVE_APPLIED"
	record "$key" native_check "$native_check"
	record "$key" stream "$st"
	if [ -z "$RS_ERROR" ]; then
		record "$key" rs "$RS_SECS"
		record "$key" rs_check "$rs_check"
	else
		record "$key" rs_failed "$RS_ERROR"
	fi
	printf 'round %d, %s stream of %d changes (%s first): written on a in %.2f s tracked, %.2f s untracked; native: applied %.2f s, flush confirmed %.2f s; ' \
		"$round" "$kind" "$n" "$first" "$st" "$nst" "$NATIVE_APPLIED" "$NATIVE_FLUSH"
	if [ -z "$RS_ERROR" ]; then
		printf 'replstamp.sync: %.2f s (returned %s, peak private memory %d MB); tables vs a: replstamp copy %s, native copy %s\n' \
			"$RS_SECS" "$RS_GOT" $((r_anon / 1024)) "$rs_check" "$native_check"
		[ "$RS_GOT" = "$n" ] || say "note: replstamp.sync('a') returned $RS_GOT for a backlog of $n"
	else
		printf 'replstamp.sync FAILED: %s; tables vs a: native copy %s\n' "$RS_ERROR" "$native_check"
	fi
	if [ "$kind" = pgbench ] && [ "$n" = "$LARGEST" ]; then
		echo "$r_proc" >"$RES/rs_proc"
		printf 'round %d, memory during the %d backlog: syncing process on b (%s) private %d MB, peak RSS %d MB; native apply worker on c private %d MB, peak RSS %d MB\n' \
			"$round" "$n" "$r_proc" $((r_anon / 1024)) $((r_hwm / 1024)) $((n_anon / 1024)) $((n_hwm / 1024))
		load_ratio "$round"
	fi
}

# pgbench on b's database "load", with no sync running and while b applies
# the backlog a still holds (b's database is made afresh first).
load_prepare() { qb -d load -c "VACUUM ANALYZE" -c "CHECKPOINT"; }
load_run() {
	pgbench -p "$PB" -n -c "$CLIENTS" -j "$CLIENTS" -T "$LOAD_SECONDS" load 2>/dev/null |
		sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}
# Changes b holds (the pages the sync committed).
applied_b() { qb -c "SELECT count(*) FROM replstamp.changes"; }
# One pgbench on b with no sync and one while b syncs, with
# replstamp.sync_delay = $2 ms.
load_ratio_at() {
	local round="$1" delay="$2" idle busy sync t0 t1 i cover n0 n1 rate
	fresh b
	qb -c "ALTER SYSTEM SET replstamp.sync_delay = $delay" -c "SELECT pg_reload_conf()" >/dev/null
	load_prepare
	idle=$(load_run)
	load_prepare
	rm -f "$WORK/busy.end"
	(sync_b >/dev/null 2>&1; now >"$WORK/busy.end") &
	sync=$!
	for i in $(seq 300); do
		[ -n "$(qb -c "$SYNC_PIDS")" ] && break
		[ -e "$WORK/busy.end" ] && break
		sleep 0.05
	done
	n0=$(applied_b)
	t0=$(now)
	busy=$(load_run)
	t1=$(now)
	n1=$(applied_b)
	rate=$(awk -v a="$n0" -v b="$n1" -v s="$(secs "$t0" "$t1")" 'BEGIN { printf "%.0f", (b - a) / s }')
	if [ -e "$WORK/busy.end" ]; then
		cover=$(awk -v a="$t0" -v b="$t1" -v e="$(cat "$WORK/busy.end")" 'BEGIN { c = (e - a) / (b - a); printf "%.2f", c < 0 ? 0 : c }')
	else
		cover=1
		# Only the load mattered: stop the sync (b is made afresh anyway).
		qb -c "SELECT pg_cancel_backend(pid) FROM ($SYNC_PIDS) s" >/dev/null
	fi
	wait "$sync" || true
	qb -c "ALTER SYSTEM RESET replstamp.sync_delay" -c "SELECT pg_reload_conf()" >/dev/null
	idle=$(printf '%.0f' "$idle"); busy=$(printf '%.0f' "$busy")
	record "load.$delay" idle "$idle"; record "load.$delay" busy "$busy"; record "load.$delay" cover "$cover"
	record "load.$delay" rate "$rate"
	record "load.$delay" ratio "$(awk -v a="$busy" -v b="$idle" 'BEGIN { printf "%.2f", a / b }')"
	printf 'round %d, pgbench on b (database load, %d clients, %d s), replstamp.sync_delay = %d ms: %d TPS with no sync, %d TPS while b syncs the %d backlog: %.2f; the sync applied %d changes/s meanwhile (%s)\n' \
		"$round" "$CLIENTS" "$LOAD_SECONDS" "$delay" "$idle" "$busy" "$LARGEST" \
		"$(awk -v a="$busy" -v b="$idle" 'BEGIN { print a / b }')" "$rate" \
		"$([ "$cover" = 1 ] && echo "the sync ran through the whole pgbench run and was then cancelled" ||
			echo "WARNING: the sync ended after $cover of the pgbench run, so the ratio is partly without it")"
}
load_ratio() {
	local d
	for d in $LOAD_DELAYS; do load_ratio_at "$1" "$d"; done
}

echo "apply speed: pgbench scale $SCALE on a, b and c; $CLIENTS clients write the stream on a;" \
	"synchronous_commit = off; $ROUNDS round(s)"
for round in $(seq "$ROUNDS"); do
	for n in $BACKLOGS; do measure pgbench "$n" "$round"; done
	if [ "$HOT" -gt 0 ]; then measure hot "$HOT" "$round"; fi
	if [ "$BIG" -gt 0 ]; then measure bigtx "$BIG" "$round"; fi
done

# The summary: medians of the rounds.
MEASURED=$(for n in $BACKLOGS; do echo "pgbench.$n"; done; if [ "$HOT" -gt 0 ]; then echo "hot.$HOT"; fi
	if [ "$BIG" -gt 0 ]; then echo "bigtx.$BIG"; fi)
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "-" }'; }
checks() {   # OK when every round was OK
	[ -f "$RES/$1.$2" ] || { echo "-"; return; }
	local bad
	bad=$(grep -vc '^OK$' "$RES/$1.$2" || true)
	[ "$bad" = 0 ] && echo OK || echo "DIFFERENT($bad/$(wc -l <"$RES/$1.$2"))"
}
echo
echo "median of $ROUNDS round(s).  Seconds are wall clock: native from ALTER SUBSCRIPTION ... ENABLE"
echo "until c had applied the stream (appl.: applied and visible, the point replstamp is timed to;"
echo "its changes/s and the first ratio use this one) and until the slot's confirmed_flush_lsn on a"
echo "passed its end (flush); replstamp for one SELECT replstamp.sync('a'), which returns once the"
echo "changes are applied and visible.  ratio = replstamp changes/s / native changes/s.  MB: peak"
echo "private memory (RssAnon) of c's apply worker and of the process doing the sync on b."
printf '%-18s | %-34s | %-25s | %-13s | %s\n' "" "native logical replication" "replstamp.sync('a')" "ratio" "tables vs origin"
printf '%-8s %9s | %8s %8s %9s %6s | %8s %9s %6s | %6s %6s | %-9s %s\n' \
	stream changes "appl. s" "flush s" "changes/s" MB "sync s" "changes/s" MB "appl." flush replstamp native
for kn in $MEASURED; do
	n=${kn#*.}
	nf=$(med "$kn" native_flush); na=$(med "$kn" native_applied); rs=$(med "$kn" rs)
	if [ -n "$rs" ]; then
		ratio=$(awk -v r="$rs" -v f="$nf" -v a="$na" 'BEGIN { printf "%6.2f %6.2f", a / r, f / r }')
		rsr=$(rate "$n" "$rs")
		rs=$(printf '%.2f' "$rs")
	else
		rs="failed" rsr="-" ratio=$(printf '%6s %6s' - -)
	fi
	printf '%-8s %9d | %8.2f %8.2f %9s %6.0f | %8s %9s %6.0f | %s | %-9s %s\n' \
		"${kn%%.*}" "$n" "$na" "$nf" "$(rate "$n" "$na")" "$(med "$kn" native_anon)" \
		"$rs" "$rsr" "$(med "$kn" rs_anon)" "$ratio" \
		"$(checks "$kn" rs_check)" "$(checks "$kn" native_check)"
done
for kn in $MEASURED; do
	if [ -f "$RES/$kn.rs_failed" ]; then
		echo "replstamp.sync failed in $(wc -l <"$RES/$kn.rs_failed") round(s) of the ${kn%%.*} stream of ${kn#*.}: $(tail -1 "$RES/$kn.rs_failed")"
	fi
done
echo "each round (s): $(for kn in $MEASURED; do
	printf '%s: native flush %s, applied %s, replstamp %s; ' "$kn" "$(rounds_of "$kn" native_flush)" "$(rounds_of "$kn" native_applied)" "$(rounds_of "$kn" rs)"
done)"

# Cost per change against the history: the smallest backlog, and the
# pgbench stream of the hot-row backlog's size.
base=$(med "pgbench.$SMALLEST" rs)
if [ -n "$base" ]; then
	line=""
	for n in $BACKLOGS; do
		[ "$n" = "$SMALLEST" ] && continue
		r=$(med "pgbench.$n" rs)
		[ -n "$r" ] && line="$line $n: $(awk -v b="$base" -v bn="$SMALLEST" -v r="$r" -v n="$n" 'BEGIN { printf "%.2f", (n / r) / (bn / b) }');"
	done
	[ -n "$line" ] && echo "replstamp changes/s relative to the $SMALLEST backlog (1.00 = flat):$line"
fi
if [ "$HOT" -gt 0 ]; then
	hr=$(med "hot.$HOT" rs); pr=$(med "pgbench.$HOT" rs)
	hn=$(med "hot.$HOT" native_applied); pn=$(med "pgbench.$HOT" native_applied)
	if [ -n "$pn" ]; then
		printf 'hot rows (%d rows) vs the pgbench stream, both %d changes, changes/s: replstamp %s, native (applied) %.2f (1.00 = the same cost per change)\n' \
			"$SCALE" "$HOT" "$([ -n "$hr" ] && [ -n "$pr" ] && awk -v h="$hr" -v p="$pr" 'BEGIN { printf "%.2f", p / h }' || echo -)" \
			"$(awk -v h="$hn" -v p="$pn" 'BEGIN { print p / h }')"
	else
		echo "hot rows: no pgbench stream of $HOT changes to compare with (add $HOT to APPLY_BACKLOGS)"
	fi
fi
if [ -f "$RES/pgbench.$LARGEST.rs_anon" ]; then
	printf 'memory during the %d backlog: syncing process on b (%s): private (RssAnon) %.0f MB, peak RSS (VmHWM, with the shared buffers it touched) %.0f MB; native apply worker on c: %.0f MB, %.0f MB\n' \
		"$LARGEST" "$(cat "$RES/rs_proc")" "$(med "pgbench.$LARGEST" rs_anon)" "$(med "pgbench.$LARGEST" rs_hwm)" \
		"$(med "pgbench.$LARGEST" native_anon)" "$(med "pgbench.$LARGEST" native_hwm)"
fi
if [ "$BIG" -gt 0 ] && [ -f "$RES/bigtx.$BIG.rs_anon" ]; then
	printf 'one transaction of %d changes, applied whole: syncing process on b private %.0f MB (peak RSS %.0f MB); native apply worker on c %.0f MB (%.0f MB)\n' \
		"$BIG" "$(med "bigtx.$BIG" rs_anon)" "$(med "bigtx.$BIG" rs_hwm)" "$(med "bigtx.$BIG" native_anon)" "$(med "bigtx.$BIG" native_hwm)"
fi
for d in $LOAD_DELAYS; do
	[ -f "$RES/load.$d.idle" ] || continue
	printf 'pgbench on b (another database, %d clients, %d s) while b syncs the %d backlog / with no sync, replstamp.sync_delay = %d ms: %.2f, the sync applying %.0f changes/s meanwhile (median of the rounds'"'"' ratios %s; TPS with no sync %s, while syncing %s; changes/s %s; share of each run the sync ran through: %s)\n' \
		"$CLIENTS" "$LOAD_SECONDS" "$LARGEST" "$d" "$(med "load.$d" ratio)" "$(med "load.$d" rate)" "$(rounds_of "load.$d" ratio)" \
		"$(rounds_of "load.$d" idle)" "$(rounds_of "load.$d" busy)" "$(rounds_of "load.$d" rate)" "$(rounds_of "load.$d" cover)"
done
echo "targets: ratio (appl.) >= 1.0 on the 100000 and 1000000 pgbench streams and on hot rows (issues 21, 25);"
echo "replstamp changes/s flat within 20 % from 10000 to 1000000 and on hot rows; the syncing process under"
echo "100 MB at 1000000 and for the one large transaction (flat memory); pgbench on b >= 0.70"

#!/usr/bin/env bash
# How long does CALL replstamp.backup() take next to the other ways of
# copying the same cluster?  On a pgbench database of scale BENCH_SCALE
# (50: about 750 MB), in one run: replstamp.backup (with its default
# replstamp.backup_sync_method, auto: one syncfs() on Linux 5.8 or later,
# and with fsync, a call per file as pg_basebackup makes), pg_basebackup
# -Fp -Xfetch -c fast, and cp -a of the stopped data directory plus sync.
# Each copy goes to the same file system (it needs free space for
# 4 x BENCH_ROUNDS copies); caches are not dropped (that needs root).
#
#   test/bench/backup_speed.sh
#   BENCH_SCALE=10 test/bench/backup_speed.sh
#   BENCH_CHECKSUMS=1 test/bench/backup_speed.sh   (initdb -k: every copy
#       verifies page checksums, replstamp.backup and pg_basebackup alike)
#   BENCH_TABLES=3000 test/bench/backup_speed.sh   (as many more small
#       tables, three files each: where a call per file costs)
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/backup_speed.sh" "$@"

SCALE=${BENCH_SCALE:-50}
bench_cluster "max_wal_size = 4GB" \
	"# Remove, not keep, the WAL of the load: cp -a would copy it, the backups not." \
	"wal_recycle = off"
pgbench -i -q -s "$SCALE" bench >/dev/null 2>&1
psql -qX -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY" \
	-c "CREATE EXTENSION replstamp" \
	-c "SELECT replstamp.track(t::regclass) FROM unnest('{pgbench_accounts,pgbench_branches,pgbench_tellers,pgbench_history}'::text[]) t" \
	-c "VACUUM ANALYZE" -c "CHECKPOINT" -c "SELECT pg_switch_wal()" -c "CHECKPOINT" >/dev/null
if [ "${BENCH_TABLES:-0}" -gt 0 ]; then
	psql -qX -v ON_ERROR_STOP=1 -c "DO \$\$ BEGIN FOR i IN 1..${BENCH_TABLES} LOOP
		EXECUTE format('CREATE TABLE small_%s (id int PRIMARY KEY, v text)', i);
		EXECUTE format('INSERT INTO small_%s VALUES (1, %L)', i, 'x');
		IF i % 100 = 0 THEN COMMIT; END IF; END LOOP; END \$\$" -c "CHECKPOINT" >/dev/null
fi
nfiles=$(find "$WORK/data" -type f | wc -l)
size=$(du -sm "$WORK/data" | cut -f1)
wal=$(du -sm "$WORK/data/pg_wal" | cut -f1)
ROUNDS=${BENCH_ROUNDS:-3}

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# Rounds alternate the three methods; each figure is the median.  Copies
# are kept until the end: on ext4, creating files right after deleting as
# many costs more (the inode allocator avoids recently freed inodes), which
# would charge one method for the deletions of the one before.
: >"$WORK/rs.t"; : >"$WORK/rf.t"; : >"$WORK/bb.t"; : >"$WORK/cp.t"
for round in $(seq "$ROUNDS"); do
	t0=$(now)
	psql -qX -c "CALL replstamp.backup('$WORK/rs$round')" 2>/dev/null
	secs "$t0" "$(now)" >>"$WORK/rs.t"; echo >>"$WORK/rs.t"
	pg_verifybackup -q "$WORK/rs$round"

	t0=$(now)
	PGOPTIONS="-c replstamp.backup_sync_method=fsync" \
		psql -qX -c "CALL replstamp.backup('$WORK/rf$round')" 2>/dev/null
	secs "$t0" "$(now)" >>"$WORK/rf.t"; echo >>"$WORK/rf.t"
	pg_verifybackup -q "$WORK/rf$round"

	t0=$(now)
	pg_basebackup -D "$WORK/bb$round" -Fp -Xfetch -c fast
	sync
	secs "$t0" "$(now)" >>"$WORK/bb.t"; echo >>"$WORK/bb.t"

	pg_ctl -D "$WORK/data" -m fast -w stop >/dev/null
	t0=$(now)
	cp -a "$WORK/data" "$WORK/cp$round"
	sync
	secs "$t0" "$(now)" >>"$WORK/cp.t"; echo >>"$WORK/cp.t"
	pg_ctl -D "$WORK/data" -l "$WORK/log" -w start >/dev/null
done
t_rs=$(median <"$WORK/rs.t"); t_rf=$(median <"$WORK/rf.t"); t_bb=$(median <"$WORK/bb.t"); t_cp=$(median <"$WORK/cp.t")

printf '\nbackup of a %d MB data directory (%d files, %d MB of it WAL; pgbench scale %d; data checksums %s), median of %d rounds\n' \
	"$size" "$nfiles" "$wal" "$SCALE" "$(psql -qXAt -c 'SHOW data_checksums')" "$ROUNDS"
printf '%-40s %8s %10s\n' method seconds "vs cp -a"
printf '%-40s %8.2f %10.2f\n' "cp -a of the stopped cluster + sync" "$t_cp" 1
printf '%-40s %8.2f %10.2f\n' "pg_basebackup -Fp -Xfetch -c fast" "$t_bb" "$(ratio "$t_bb" "$t_cp")"
printf '%-40s %8.2f %10.2f\n' "CALL replstamp.backup()" "$t_rs" "$(ratio "$t_rs" "$t_cp")"
printf '%-40s %8.2f %10.2f\n' "  the same, backup_sync_method = fsync" "$t_rf" "$(ratio "$t_rf" "$t_cp")"
printf 'targets: replstamp.backup at most 1.15 x cp -a, and faster than pg_basebackup\n'
printf 'each round (s): replstamp.backup %s; with fsync %s; pg_basebackup %s; cp -a %s\n' \
	"$(paste -sd' ' "$WORK/rs.t")" "$(paste -sd' ' "$WORK/rf.t")" "$(paste -sd' ' "$WORK/bb.t")" "$(paste -sd' ' "$WORK/cp.t")"

#!/usr/bin/env bash
# What a sequence covered by replstamp (track_sequence(), or track() of a
# table with a serial key) costs per value: nextval() of a plain sequence
# against one covered, a million values in one statement, best of
# BENCH_RUNS (5) each, interleaved.  A covered sequence is an ordinary
# sequence with other bounds, so the two should not differ beyond noise.
#
#   test/bench/sequence_cost.sh
#   BENCH_VALUES=5000000 BENCH_RUNS=9 test/bench/sequence_cost.sh
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/sequence_cost.sh" "$@"

VALUES=${BENCH_VALUES:-1000000}
RUNS=${BENCH_RUNS:-5}
bench_cluster
psql -qX -c "CREATE EXTENSION replstamp" \
	-c "CREATE SEQUENCE plain_seq" -c "CREATE SEQUENCE covered_seq" \
	-c "SELECT replstamp.track_sequence('covered_seq')" >/dev/null

# Milliseconds of one statement that takes $VALUES values of sequence $1.
once() {
	psql -qXAt -c '\timing on' -c "SELECT count(nextval('$1')) FROM generate_series(1, $VALUES)" |
		sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}

best_plain=""
best_covered=""
for i in $(seq "$RUNS"); do
	p=$(once plain_seq)
	c=$(once covered_seq)
	best_plain=$(printf '%s\n%s\n' "$p" "$best_plain" | grep . | sort -n | head -1)
	best_covered=$(printf '%s\n%s\n' "$c" "$best_covered" | grep . | sort -n | head -1)
done
psql -qXAt -c "SELECT 'covered_seq bounds: ' || seqmin || '..' || seqmax FROM pg_sequence WHERE seqrelid = 'covered_seq'::regclass"
printf '\n%s nextval() in one statement, best of %s, in ms\n' "$VALUES" "$RUNS"
printf '%-24s %10s\n' "plain sequence" "$best_plain" "covered by replstamp" "$best_covered"
